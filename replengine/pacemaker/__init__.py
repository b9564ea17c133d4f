"""The OCF resource agent's logic (ocf:replengine:replengine)."""
