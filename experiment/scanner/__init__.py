"""Scanner triggers: keyboard, serial and simulated sources, and pulse checks."""
