"""The sampling settings a calibration holds for: recorded at the fit, stored with it, compared at prediction.

A sampler record is ``ModelInfo.sampler``'s mapping (name, steps, n_samples, eta, clip, grid,
log_snr_range; for a residual model also shrink_refinement). Fewer steps or another grid
spread the samples differently, so the calibration's scales hold only for the settings it recorded.
"""

from __future__ import annotations

__all__ = ["SAMPLER_KEYS", "sampler_mismatch", "sampler_used"]

#: The sampling settings that change the spread of the samples, and so the calibration.
SAMPLER_KEYS = ("name", "steps", "grid", "log_snr_range", "shrink_refinement")


def sampler_used(metadata: dict) -> dict:
    """The ``ModelInfo.sampler`` entry (name, steps, n_samples, eta, clip, grid, log_snr_range) of a
    reconstruction's metadata; for a residual model also ``shrink_refinement`` (which mean the
    errors were measured on); ``consistency_strength`` ζ of the data step and ``base_variance``
    (whether the variance holds the base's error variance)."""
    low, high = metadata["log_snr_range"]
    used = {"name": metadata["sampler"], "steps": int(metadata["steps"]), "n_samples": int(metadata["n_samples"]),
            "eta": float(metadata["eta"]), "clip": metadata["clip"], "grid": metadata["grid"],
            "log_snr_range": [None if low is None else float(low), float(high)]}
    if metadata.get("formulation") == "residual":
        used["shrink_refinement"] = bool(metadata.get("shrink_refinement", True))
    used["consistency_strength"] = float(metadata.get("consistency_strength") or 0.0)
    used["base_variance"] = any(v is not None for v in metadata.get("base_error_variance", []))
    return used


def sampler_mismatch(fitted: dict, used: dict) -> str | None:
    """A sentence when ``used`` (a reconstruction's metadata: sampler, steps, grid, log_snr_range)
    samples differently from ``fitted`` (a calibration's sampler record), None when it matches
    or ``fitted`` is empty (the fit did not record its sampler)."""
    if not fitted:
        return None
    fitted = _comparable(fitted)
    actual = _comparable({"name": used.get("sampler", used.get("name")), **used})
    differing = [key for key in fitted if key in actual and fitted[key] != actual[key]]
    if not differing:
        return None
    said = ", ".join(_difference_words(key, actual[key], fitted[key]) for key in differing)
    return (f"This reconstruction samples with {said}: the error bars were fitted on other samples "
            f"and may be off; reconstruct with the model's defaults or calibrate again.")


def _difference_words(key: str, actual, fitted) -> str:
    if key == "shrink_refinement":
        means = {True: "the shrunk mean", False: "the plain mean"}
        return f"{means[bool(actual)]} (calibrated on {means[bool(fitted)]})"
    return f"{key} {actual} (calibrated at {fitted})"


def json_sampler(sampler: dict) -> dict:
    """A sampler record for JSON: None values dropped (clip kept), log_snr_range as floats."""
    out = {key: value for key, value in sampler.items() if value is not None or key == "clip"}
    if out.get("log_snr_range") is not None:
        out["log_snr_range"] = [None if v is None else float(v) for v in out["log_snr_range"]]
    return out


def checked_sampler(value) -> dict:
    """The stored sampler settings (a mapping of JSON scalars, log_snr_range a pair), else ValueError."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"calibration sampler must be a mapping, got {type(value).__name__}")
    for key, item in value.items():
        pair = key == "log_snr_range" and isinstance(item, list) and len(item) == 2
        if not (pair or item is None or isinstance(item, (str, int, float))):
            raise ValueError(f"calibration sampler {key} must be a number or a name, got {item!r}")
    return dict(value)


def _comparable(sampler: dict) -> dict:
    out = {key: sampler[key] for key in SAMPLER_KEYS if sampler.get(key) is not None}
    if "log_snr_range" in out:
        out["log_snr_range"] = tuple(None if v is None else round(float(v), 6) for v in out["log_snr_range"])
    return out


def sampler_words(sampler: dict) -> str:
    """``", 20 steps to log-SNR 8, N = 8"`` for describe(); empty when no steps were recorded."""
    if not sampler.get("steps"):
        return ""
    end = sampler.get("log_snr_range")
    grid_end = f" to log-SNR {float(end[1]):g}" if end else ""
    return f", {sampler['steps']} steps{grid_end}, N = {sampler.get('n_samples', '?')}"

