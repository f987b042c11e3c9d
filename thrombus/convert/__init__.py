"""DICOM -> NIfTI conversion (workflow step `convert`): find the series, check it, run dcm2niix,
pick or derive the sequence's image, scrub identifiers, write atomically; a subject's sequences
together (`convert_subject`)."""

from thrombus.convert.dcm2niix import ConversionError
from thrombus.convert.sequence import AUTO, ConvertRequest, convert_sequence
from thrombus.convert.series import SeriesError
from thrombus.convert.subject import convert_subject

__all__ = ["AUTO", "ConversionError", "ConvertRequest", "SeriesError", "convert_sequence", "convert_subject"]
