"""Prefect flows and the data-plane code they call; flows only wire steps together."""
