"""What the relay tells the floors above it (webhooks) once notifications are numbered and published.

`notifications_published` is sent after the seqs are committed and pushed to the channel layer,
with `seqs`: the list of seqs just published, in order. Receivers keep their own cursor over
seq (the outbox is the record), so a missed signal only delays them until the next one.
"""
from django.dispatch import Signal

notifications_published = Signal()
