"""Creating queues (work pools, work queues, the launch deployment) and putting jobs on them."""
