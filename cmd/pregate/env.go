package main

import (
	"fmt"
	"os"

	"github.com/spf13/pflag"
)

// envFallback gives every flag of fs not set on the command line the value of the environment
// variable PREGATE_<FLAG> (upper case, dashes as underscores), e.g. --data-dir ← PREGATE_DATA_DIR.
func envFallback(fs *pflag.FlagSet) error {
	var err error
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Changed || err != nil {
			return
		}
		name := envName(f.Name)
		if v, ok := os.LookupEnv(name); ok {
			if serr := fs.Set(f.Name, v); serr != nil {
				err = fmt.Errorf("%s=%q: %w", name, v, serr)
			}
		}
	})
	return err
}
