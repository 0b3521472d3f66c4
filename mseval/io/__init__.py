"""Readers and writers: NIfTI with checks, tables validated against `data_schemas/`, the forecast store."""
