"""DICOM: series discovery and checks, headers, pixel decoding, DICOMDIR, DICOM-SEG export."""
