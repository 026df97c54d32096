"""Checks for the deploy bundle (collector, render.yaml, dashboards, alerts).

Helpers shared by these tests live here as small modules (``promnames``,
``contract``, ``promql``); they are imported as ``bundle.<module>``.
"""
