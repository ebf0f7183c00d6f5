// Package tlsexplain words a TLS connection that failed: a port that does
// not speak TLS, a certificate that is not trusted, names another host or
// has expired, a server that wants a client certificate. `tether doctor`
// and the simulator (`tether sim`, `tether bench`) share it, so the same
// failure reads the same in both.
package tlsexplain
