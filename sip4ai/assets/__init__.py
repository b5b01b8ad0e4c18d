"""Audio the product ships with (the apology played when no AI can take a call)."""
