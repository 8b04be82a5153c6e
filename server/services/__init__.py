"""Services: what routes call. They speak Python types and typed errors, never HTTP."""
