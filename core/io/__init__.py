"""Reading and writing studies and masks: DICOM, DICOMDIR, NIfTI, label-map files, DICOM-SEG, data sets."""
