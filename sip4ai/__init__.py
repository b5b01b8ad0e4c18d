"""sip4ai: SIP-to-voice-AI appliance."""

__version__ = "0.1.0"
