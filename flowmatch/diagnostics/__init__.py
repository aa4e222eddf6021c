"""Diagnostics of trained flows and of the samplers that integrate them.

  straightness  Liu et al.'s straightness and Tong et al.'s path energy of sampled trajectories
                (reported per row by `flowmatch.compare`);
  exposure      exposure bias: the effective noise level of sampling states against the schedule,
                and two corrections (time-shifted sampling, epsilon scaling);
  spectra       radial power spectra along sampling trajectories (coarse-to-fine generation);
  roofline      FLOPs, bytes and arithmetic intensity of training and sampling on a roofline;
  runs          glue from a trained run (`generate.restore_run`) to the analyses above;
  report        the analyses on a trained run, written as JSON + PNG (scripts/diagnose.py).
"""
