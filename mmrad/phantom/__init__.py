"""The phantom: synthetic chest studies with known lesions, masks and reports, for the demo and the tests."""
