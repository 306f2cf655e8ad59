"""The live policy check: protocol, server and reservations."""
