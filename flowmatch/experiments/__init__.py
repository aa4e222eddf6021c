"""Experiment drivers: what was run and what came out.

Each module here composes library calls (`flowmatch.*`) into one experiment (sampling a run to a
file, the integrator comparison, flow matching vs DDPM, reflow, the OT reproduction, speed
benchmarks, diagnostics) and writes its results.  Drivers hold no private copies of sampling,
scoring, key handling or file writing; the library never imports this package.
"""
