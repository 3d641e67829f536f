"""The model side of Glassbox: provider client, stream parsing and the turn loop (no Django)."""
