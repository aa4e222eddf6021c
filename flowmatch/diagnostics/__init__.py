"""Diagnostics of trained flows and of the samplers that integrate them.

  straightness  Liu et al.'s straightness and Tong et al.'s path energy of sampled trajectories
                (reported per row by `flowmatch.experiments.compare`);
  exposure      exposure bias: the effective noise level of sampling states against the schedule,
                and two corrections (time-shifted sampling, epsilon scaling);
  spectra       radial power spectra along sampling trajectories (coarse-to-fine generation);
  roofline      FLOPs, bytes and arithmetic intensity of training and sampling on a roofline;
  runs          glue from a run's components (`flowmatch.training.Components`) and its training
                data to the analyses above.

The drivers that run them on trained runs and write JSON + PNG are
`flowmatch.experiments.diagnose` (scripts/diagnose.py) and `flowmatch.experiments.compare`.
"""
