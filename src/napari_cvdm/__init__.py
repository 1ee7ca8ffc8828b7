"""napari-cvdm: Conditional Variational Diffusion Models for microscopy.

The core (``model``, ``physics``, ``data``, ``checkpoint``, ``reconstruct``,
``train``, ``cli``) imports neither Qt nor napari; the napari dock widgets live
in ``napari_cvdm._widgets`` and are only imported by napari.
"""

__version__ = "0.1.0"
