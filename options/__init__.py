"""The options files (YAML) and the schema that checks them. Imports no torch: options are checked first."""
