"""``%hvdump`` commands (filled in below)."""
