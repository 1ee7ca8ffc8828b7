"""Per-pixel uncertainty of a reconstruction: calibrated error bars and how to judge them.

- :mod:`.conformal`: split-conformal calibration of the sample std (:class:`~.conformal.Calibration`,
  :func:`~.conformal.fit_calibration`); numpy only.
- :mod:`.ood`: is a new image like the calibration images (features, :func:`~.ood.check_in_distribution`).
- :mod:`.sampler`: the sampling settings a calibration holds for, and the sentence when a run differs.
- :mod:`.apply`: a stored calibration applied to a reconstruction (:func:`~.apply.uncertainty_outputs`).
- :mod:`.calibrate`: the calibrate job (:func:`~.calibrate.calibrate_model`,
  :func:`~.calibrate.with_calibration`).
- :mod:`.metrics`: a predicted uncertainty against the true error (coverage, UCE/ENCE, AUSE, Spearman).

Noise estimators live in :mod:`napari_cvdm.physics.noise`. Nothing in ``physics/`` or ``model/``
imports this package.
"""
