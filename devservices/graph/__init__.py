"""A local Microsoft identity platform token endpoint and the Microsoft Graph applications subset."""
