"""Model evaluation on a labelled data set (``dicom-node evaluate``): metrics, cases, report."""
