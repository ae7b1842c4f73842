"""The flash promotions domain: products, promos, subscriptions and notifications."""
