//go:build race

package devices

import "golang.org/x/crypto/bcrypt"

// bcryptCost under the race detector, which makes bcrypt some 30 times
// slower: race builds are test builds, and every test server's first start
// hashes the admin's password.
const bcryptCost = bcrypt.MinCost
