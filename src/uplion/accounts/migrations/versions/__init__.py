"""Revisions, one file each, chained by ``down_revision``: ``0001_accounts`` first."""
