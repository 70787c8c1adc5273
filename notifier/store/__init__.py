"""PostgreSQL state: Piccolo tables, migrations, and the queries the services use."""
