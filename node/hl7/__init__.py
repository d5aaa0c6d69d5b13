"""HL7 v2 ORU^R01 results to the EMR over MLLP."""
