"""The database: tables, the single writer, and every query (the only package that speaks SQL)."""
