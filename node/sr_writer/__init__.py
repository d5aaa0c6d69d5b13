"""One output builder per IOD (SEG, TID 1500 SR, SC, KOS, encapsulated PDF) over highdicom."""
