"""Reading mammograms and moving them, exactly and reversibly, onto the model grid.

:func:`read_mammogram` reads DICOM, PNG, TIFF and PGM into a :class:`Mammogram`; :func:`prepare_image` turns
that into the model input every part of MammoXAI uses, with the :class:`ImageGeometry` that maps results back.
"""

from mammoxai.io.breast import breast_geometry, chest_wall_side, segment_breast
from mammoxai.io.dicom import HeaderWarning, read_dicom, read_dicom_header
from mammoxai.io.fields import MetadataLabelSpace
from mammoxai.io.geometry import ImageGeometry
from mammoxai.io.mammogram import Mammogram
from mammoxai.io.preprocess import grid_shape, prepare_image
from mammoxai.io.raster import read_raster
from mammoxai.io.read import iter_mammograms, read_mammogram, read_mammograms, read_mask, sniff_format

__all__ = [
    "HeaderWarning",
    "ImageGeometry",
    "Mammogram",
    "MetadataLabelSpace",
    "breast_geometry",
    "chest_wall_side",
    "grid_shape",
    "iter_mammograms",
    "prepare_image",
    "read_dicom",
    "read_dicom_header",
    "read_mammogram",
    "read_mammograms",
    "read_mask",
    "read_raster",
    "segment_breast",
    "sniff_format",
]
