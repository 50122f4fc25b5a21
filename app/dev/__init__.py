"""`chargegate dev`: the one-command local stack (chargegate, the reCAPTCHA Enterprise
emulator and a demo driver portal in one process on 127.0.0.1), with its state under var/."""
