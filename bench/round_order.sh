# Sourced by the benchmark scripts.
#
# shuffled_for_round ROUND: prints the lines of stdin in an order of their own
# for that round, a shuffle seeded by the round. A rotation of one fixed
# order would keep every job's neighbours, and each server's place inside its
# cell, in every round; a shuffle gives each a new place, and a rerun the
# same orders.
shuffled_for_round() {
    awk -v seed="$1" 'BEGIN { srand(1000003 * (seed + 1)) } { printf "%.9f\t%s\n", rand(), $0 }' | sort -k1,1g | cut -f2-
}
