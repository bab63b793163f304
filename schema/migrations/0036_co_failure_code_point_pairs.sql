-- co_failure keys each pair with its two models in code-point order (the router's
-- ProfileFold does the same). Before, the projection ordered them by the database's
-- collation: on a database whose collation is not C (the embedded one takes the
-- machine's locale), mixed-case model names were stored as (b, a), where the new
-- statement writes (a, b), and the counts of one pair would split over two rows.
-- Every such row is moved to the code-point order, merged with its twin if it has
-- one (the counts are symmetric in the two models). A no-op on a C-collation database.
WITH swapped AS (
    DELETE FROM co_failure
    WHERE model_a COLLATE "C" > model_b COLLATE "C"
    RETURNING tenant, category, model_a, model_b, both_wrong, one_wrong, both_right
)
INSERT INTO co_failure AS c (tenant, category, model_a, model_b, both_wrong, one_wrong,
                             both_right)
SELECT tenant, category, model_b, model_a, both_wrong, one_wrong, both_right FROM swapped
ON CONFLICT (tenant, category, model_a, model_b) DO UPDATE
SET both_wrong = c.both_wrong + excluded.both_wrong,
    one_wrong = c.one_wrong + excluded.one_wrong,
    both_right = c.both_right + excluded.both_right;
