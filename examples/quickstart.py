"""Quick start: submit, map, and what a batch looked like."""

from __future__ import annotations

from batchpool import BatchPoolExecutor, job_info


def square(x: int) -> int:
    return x * x


def main() -> None:
    with BatchPoolExecutor(max_workers=2) as ex:
        fut = ex.submit(pow, 2, 10)
        print("pow(2, 10) =", fut.result(timeout=30))

        futures = [ex.submit(square, i) for i in range(10_000)]
        total = sum(f.result(timeout=30) for f in futures)
        sizes = {info.batch_id: info.batch_size for f in futures if (info := job_info(f))}
        print(f"sum of squares = {total}, carried in {len(sizes)} batches (largest {max(sizes.values())})")

        print("map:", sum(ex.map(square, range(100_000), timeout=60)))


if __name__ == "__main__":
    main()
