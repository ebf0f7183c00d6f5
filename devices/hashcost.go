//go:build !race

package devices

import "golang.org/x/crypto/bcrypt"

// bcryptCost is the work factor of people's password hashes.
const bcryptCost = bcrypt.DefaultCost
