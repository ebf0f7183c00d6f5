package broker

// PurgeSession implements SessionPurger: it queues the deletion of the
// stored session of clientID with its subscriptions and its queued and
// inflight messages. The engine's copy is the caller's (Auth.purgeSession,
// whose UnsubscribeClient has taken its subscriptions out of the
// persistence index through OnUnsubscribed).
func (s *Storage) PurgeSession(clientID string) {
	s.w.enqueue(newOp(opClientDelete, clientID))
}
