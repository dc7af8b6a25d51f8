"""A small DICOM node in front of the application: C-STORE in, the app on each study, the SEG back to the PACS.

For a site with one inference machine and no MONAI Deploy Informatics Gateway; the application itself has no
network code. Start: ``python -m gateway --config CONFIG`` (README "Connect to your PACS").
"""
