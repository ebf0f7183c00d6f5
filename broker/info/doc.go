// Package info is what the broker tells about itself: its connected
// clients, its persistent sessions, its figures and its listeners', as
// plain values without the engine's types. The dashboard reads them
// through interfaces of its own (dashboard.Broker, dashboard.Sessions)
// and so does not depend on the engine.
package info
