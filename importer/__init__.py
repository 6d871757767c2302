"""The import direction, QuickBooks Online -> TimeTracker: change notifications from Intuit's webhooks and QBO's
change data capture, one Kafka topic, and a consumer that applies what changed to TimeTracker's database the way
TimeTracker's own code would. Above ``consumer`` and ``producer`` (it reads QBO through the consumer's client and
writes TimeTracker's tables); nothing in those imports it."""
