"""Webhook signing, the durable outbox and delivery. Independent of the HiDream service package."""
