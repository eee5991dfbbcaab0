// Package probe holds the tests that prove the vmtest VM is fit for
// udpmapsync's kernel tests: Debian's kernel of the suite asked for (6.1 or
// 6.12) with BTF, fentry programs that load and attach, and network
// namespaces with veth and bridges. They skip outside the VM; vmtest's own
// test runs them inside it through vmrun.
package probe
