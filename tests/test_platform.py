"""Platform detection, Render resource attributes, memory and CPU limits, on
fake /proc and cgroup trees (v1 and v2) and on this machine's real ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from otel_render.platform import (
    MIB,
    HostFS,
    cpu_limit,
    detect_platform,
    find_memory_cgroup,
    instance_memory_in_use,
    memory_limit,
    render_resource_attributes,
    without_user_keys,
)

RENDER_ENV = {
    "RENDER": "true",
    "RENDER_SERVICE_NAME": "shop-web",
    "RENDER_SERVICE_ID": "srv-abc123",
    "RENDER_SERVICE_TYPE": "web",
    "RENDER_INSTANCE_ID": "srv-abc123-5f7d9c-xk2p",
    "RENDER_GIT_COMMIT": "0123456789abcdef0123456789abcdef01234567",
    "RENDER_GIT_BRANCH": "main",
    "RENDER_EXTERNAL_URL": "https://shop.onrender.com",
    "IS_PULL_REQUEST": "false",
}

MEMINFO = "MemTotal:       16384000 kB\nMemFree:         1000000 kB\n"


def write(root: Path, path: str, text: str) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


def cgroup_v2(root: Path, *, limit: str = "536870912", current: int = 300 * MIB, inactive: int = 40 * MIB,
              path: str = "/", parent_limit: str | None = None) -> HostFS:
    write(root, "/proc/self/cgroup", f"0::{path}\n")
    write(root, "/proc/self/mountinfo", "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n")
    write(root, "/proc/meminfo", MEMINFO)
    leaf = "/sys/fs/cgroup" + ("" if path == "/" else path)
    write(root, f"{leaf}/memory.max", limit + "\n")
    write(root, f"{leaf}/memory.current", f"{current}\n")
    write(root, f"{leaf}/memory.stat", f"anon 1000\nfile 2000\ninactive_file {inactive}\nactive_file 5\n")
    if parent_limit is not None:
        write(root, "/sys/fs/cgroup/memory.max", parent_limit + "\n")
    return HostFS(root)


def cgroup_v1(root: Path, *, limit: int, usage: int, inactive: int, mount_root: str = "/",
              path: str = "/docker/abc") -> HostFS:
    write(root, "/proc/self/cgroup", f"12:pids:{path}\n4:memory:{path}\n1:name=systemd:{path}\n")
    write(
        root,
        "/proc/self/mountinfo",
        f"35 31 0:32 {mount_root} /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n",
    )
    write(root, "/proc/meminfo", MEMINFO)
    relative = path if mount_root == "/" else path[len(mount_root):]
    leaf = "/sys/fs/cgroup/memory" + relative
    write(root, f"{leaf}/memory.limit_in_bytes", f"{limit}\n")
    write(root, f"{leaf}/memory.usage_in_bytes", f"{usage}\n")
    write(root, f"{leaf}/memory.stat", f"rss 10\ntotal_inactive_file {inactive}\nhierarchical_memory_limit {limit}\n")
    return HostFS(root)


# --- detection and attributes ------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"RENDER": "true"}, "render"),
        ({"RENDER": "TRUE"}, "render"),
        ({"RENDER": "false"}, "local"),
        ({}, "local"),
        ({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, "other"),
        ({"DYNO": "web.1"}, "other"),
    ],
)
def test_detect_platform(environ, expected):
    assert detect_platform(environ) == expected


def test_render_variables_become_resource_attributes():
    attributes = render_resource_attributes(RENDER_ENV)
    assert attributes == {
        "cloud.provider": "render",
        "service.name": "shop-web",
        "service.version": "0123456789ab",
        "deployment.environment.name": "production",
        "render.service.id": "srv-abc123",
        "render.service.type": "web",
        "render.instance.id": "srv-abc123-5f7d9c-xk2p",
        "render.external_url": "https://shop.onrender.com",
        "vcs.ref.head.name": "main",
        "vcs.ref.head.revision": "0123456789abcdef0123456789abcdef01234567",
    }


def test_pull_request_previews_are_their_own_environment():
    attributes = render_resource_attributes({**RENDER_ENV, "IS_PULL_REQUEST": "true"})
    assert attributes["deployment.environment.name"] == "preview"


def test_no_render_attributes_off_render():
    assert render_resource_attributes({"RENDER_SERVICE_NAME": "x"}) == {}


def test_user_resource_variables_win():
    attributes = render_resource_attributes(RENDER_ENV)
    environ = {
        **RENDER_ENV,
        "OTEL_SERVICE_NAME": "checkout",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=staging, team=payments",
    }
    kept = without_user_keys(attributes, environ)
    assert "service.name" not in kept
    assert "deployment.environment.name" not in kept
    assert kept["render.service.id"] == "srv-abc123"


# --- memory -------------------------------------------------------------------


def test_override_wins_over_everything(tmp_path):
    fs = cgroup_v2(tmp_path)
    limit = memory_limit(RENDER_ENV, override_mb=300, fs=fs)
    assert (limit.bytes, limit.source) == (300 * MIB, "OTEL_RENDER_MEMORY_LIMIT_MB")


def test_cgroup_v2_limit_and_usage_without_inactive_file_cache(tmp_path):
    fs = cgroup_v2(tmp_path, limit=str(512 * MIB), current=300 * MIB, inactive=40 * MIB)
    limit = memory_limit({}, fs=fs)
    assert limit.bytes == 512 * MIB
    assert limit.source.startswith("cgroup v2")
    assert instance_memory_in_use(fs) == 260 * MIB


def test_cgroup_v2_takes_the_tightest_ancestor_limit(tmp_path):
    fs = cgroup_v2(tmp_path, limit="max", path="/system.slice/app.service", parent_limit=str(1024 * MIB))
    cgroup = find_memory_cgroup(fs)
    assert cgroup is not None and cgroup.path == "/sys/fs/cgroup/system.slice/app.service"
    assert memory_limit({}, fs=fs).bytes == 1024 * MIB


def test_cgroup_v2_without_limit_falls_back_to_render_plan(tmp_path):
    fs = cgroup_v2(tmp_path, limit="max")
    limit = memory_limit({**RENDER_ENV, "RENDER_CPU_COUNT": "1"}, fs=fs)
    assert (limit.bytes, limit.source) == (2048 * MIB, "Render plan (RENDER_CPU_COUNT=1)")


def test_render_default_when_plan_unknown(tmp_path):
    fs = cgroup_v2(tmp_path, limit="max")
    limit = memory_limit({**RENDER_ENV, "RENDER_CPU_COUNT": "3"}, fs=fs)
    assert (limit.bytes, limit.source) == (512 * MIB, "Render default")


def test_physical_memory_off_render(tmp_path):
    fs = cgroup_v2(tmp_path, limit="max")
    limit = memory_limit({}, fs=fs)
    assert (limit.bytes, limit.source) == (16384000 * 1024, "physical memory")


def test_cgroup_limit_above_physical_memory_is_no_limit(tmp_path):
    fs = cgroup_v2(tmp_path, limit=str(64 * 1024 * MIB))
    assert memory_limit({}, fs=fs).source == "physical memory"


def test_cgroup_v1_limit_and_usage(tmp_path):
    fs = cgroup_v1(tmp_path, limit=768 * MIB, usage=500 * MIB, inactive=100 * MIB)
    limit = memory_limit({}, fs=fs)
    assert limit.bytes == 768 * MIB and limit.source.startswith("cgroup v1")
    assert instance_memory_in_use(fs) == 400 * MIB


def test_cgroup_v1_unlimited_is_ignored(tmp_path):
    fs = cgroup_v1(tmp_path, limit=9223372036854771712, usage=1, inactive=0)
    assert memory_limit({}, fs=fs).source == "physical memory"


def test_cgroup_v1_inside_a_container_whose_mount_root_is_its_own_cgroup(tmp_path):
    # /proc/self/cgroup names /docker/abc, but the container sees that cgroup at the mount point.
    fs = cgroup_v1(tmp_path, limit=256 * MIB, usage=10 * MIB, inactive=0, mount_root="/docker/abc")
    cgroup = find_memory_cgroup(fs)
    assert cgroup is not None and cgroup.path == "/sys/fs/cgroup/memory"
    assert memory_limit({}, fs=fs).bytes == 256 * MIB


def test_no_cgroup_at_all(tmp_path):
    write(tmp_path, "/proc/meminfo", MEMINFO)
    fs = HostFS(tmp_path)
    assert find_memory_cgroup(fs) is None
    assert instance_memory_in_use(fs) is None
    assert memory_limit(RENDER_ENV, fs=fs).source == "Render default"


def test_this_machine_reports_sane_values():
    limit = memory_limit({})
    assert 16 * MIB <= limit.bytes
    in_use = instance_memory_in_use()
    if in_use is not None:
        assert 0 < in_use < limit.bytes


# --- cpu ------------------------------------------------------------------------


def test_render_cpu_count_is_fractional():
    assert cpu_limit({"RENDER_CPU_COUNT": "0.5"}, fs=HostFS(Path("/nonexistent"))).cpus == 0.5


def test_cgroup_v2_cpu_quota(tmp_path):
    write(tmp_path, "/sys/fs/cgroup/cpu.max", "150000 100000\n")
    limit = cpu_limit({}, fs=HostFS(tmp_path))
    assert (limit.cpus, limit.source) == (1.5, "cgroup cpu quota")


def test_cgroup_v1_cpu_quota(tmp_path):
    write(tmp_path, "/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "50000\n")
    write(tmp_path, "/sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000\n")
    assert cpu_limit({}, fs=HostFS(tmp_path)).cpus == 0.5


def test_unlimited_quota_falls_back_to_host(tmp_path):
    write(tmp_path, "/sys/fs/cgroup/cpu.max", "max 100000\n")
    limit = cpu_limit({}, fs=HostFS(tmp_path))
    assert limit.source == "host" and limit.cpus >= 1
