"""The lark grammar of the .ein language (package data: ein.lark)."""
