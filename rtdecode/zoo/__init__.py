"""The toy model zoo: small models trained by ``rtdecode`` on the simulator's stimuli."""
