"""Building: result objects, HL7 messages and alerts against the original study, into the outbox."""
