# Shell helpers shared by the launch scripts (sourced, not run).

show() {  # print a command as a shell would read it back
  local a out="+"
  for a in "$@"; do
    if [[ "$a" =~ ^[A-Za-z0-9_./=:,@%+-]+$ ]]; then out+=" $a"; else out+=" '${a//\'/\'\\\'\'}'"; fi
  done
  echo "$out"
}
