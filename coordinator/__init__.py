"""The coordinator: scheduler, state store, relay, catalog and analyst API."""
