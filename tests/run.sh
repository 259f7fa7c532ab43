#!/bin/bash
# Runs every test program given and prints the grand total as the last line.
passed=0; failed=0; crashed=0
for t in "$@"; do
  echo "== $(basename "$t")"
  out=$("$t" 2>&1); rc=$?
  echo "$out"
  line=$(echo "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed$' | tail -1)
  if [ -n "$line" ]; then
    p=$(echo "$line" | awk '{print $1}'); f=$(echo "$line" | awk '{print $3}')
    passed=$((passed + p)); failed=$((failed + f))
  fi
  if [ -z "$line" ] || { [ $rc -ne 0 ] && [ "${f:-0}" -eq 0 ]; }; then
    echo "  FAIL $(basename "$t") exited with status $rc"; failed=$((failed + 1)); crashed=1
  fi
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
